"""Sample sites recorded by name, without ``poutine.trace``'s graph, for the per-step paths.

Training runs model and guide every step. What the objectives read of a run is its sample
sites' messages (distribution, value, plates, scale, mask), which a light handler can keep
by reference; ``poutine.trace`` also copies each message into a graph and records every
parameter site. :class:`SiteRecorder` keeps what is read and replays a guide's draws in the
model as ``poutine.replay`` does.
"""

from __future__ import annotations

from pyro.poutine.messenger import Messenger


class SiteRecorder(Messenger):
    """Records a run's sample sites in ``nodes`` (name → message), as a trace's nodes.

    The messages are kept, not copied: handlers below this one may still add to them after
    it has seen them (pvae's minibatch scale records itself that way), and a reader after
    the run sees their final state.

    Example::

        >>> with SiteRecorder() as guide_run:
        ...     guide(x)  # doctest: +SKIP
        >>> with SiteRecorder() as model_run, ReplaySites(guide_run.nodes):
        ...     model(x)  # doctest: +SKIP
    """

    def __init__(self):
        super().__init__()
        self.nodes: dict = {}

    def _postprocess_message(self, msg) -> None:
        if msg["type"] != "sample":
            return
        if msg["name"] in self.nodes:
            # poutine.trace refuses a repeated name too: the second site would hide the first.
            raise RuntimeError(f"Multiple sample sites named {msg['name']!r}")
        self.nodes[msg["name"]] = msg


class ReplaySites(Messenger):
    """``poutine.replay`` against recorded ``nodes``: the model's latents take their values."""

    def __init__(self, nodes: dict):
        super().__init__()
        self.nodes = nodes

    def _pyro_sample(self, msg) -> None:
        source = self.nodes.get(msg["name"])
        if source is None or msg["is_observed"]:
            return
        if source["is_observed"]:
            raise RuntimeError(f"site {msg['name']} must be sampled in trace")
        msg["done"] = True
        msg["value"] = source["value"]
        msg["infer"] = source["infer"]


def record_sites(fn, args) -> SiteRecorder:
    """Run ``fn(*args)`` and return its sample sites (``.nodes``, name → site).

    Example::

        >>> record_sites(guide, (x,)).nodes["z"]["value"]  # doctest: +SKIP
    """
    with SiteRecorder() as recorder:
        fn(*args)
    return recorder
