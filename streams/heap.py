"""The worker's cyclic garbage collector, set for a stream of short-lived events.

CPython runs a full (generation 2) collection once enough objects have
survived the younger generations, and a full collection scans every tracked
object of the process. A started worker holds ~390,000 of them (Faust,
aiokafka, scikit-learn, pydantic schemas, the chDB client). With CPython's
default thresholds (700, 10, 10), a backlog of request events made objects
survive fast enough for a full collection about once a second: measured with
``bench/pipeline.py`` (50,000 events, ``gc.callbacks`` timing), 130–220 ms
each, holding the GIL — about a quarter of the event loop's time during the
backlog, and stalls of that length on the decision path.

:func:`tune_collector`, once start-up is done:

* moves what start-up built into the permanent generation, which collections
  ignore (CPython docs, ``gc.freeze``: "Freeze all the objects tracked by the
  garbage collector; move them to a permanent generation and ignore them in
  all the future collections"; the technique of Instagram's "Dismissing
  Python Garbage Collection at Instagram", 2017);
* raises the youngest generation's threshold from 700 to
  :data:`GEN0_THRESHOLD` allocations (``gc.set_threshold``): a batch of 1,000
  events allocates a few thousand tracked objects that live as long as the
  batch, so at 700 most of them were collected twice and promoted before they
  died, and the promotions triggered the full collections.

Measured the same way (two rounds each, shared 2-core machine): full
collections during the backlog went from 7 (20–185 ms each) with the freeze
alone to 2–3 (~60 ms) with both; the backlog from ~15,900 to ~19,300
events/s. Collections still run, so reference cycles made later are still
freed; objects frozen stay alive for the life of the process (what start-up
builds does anyway).
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)

#: Allocations (minus deallocations) of tracked objects between two collections of the
#: youngest generation (CPython's default: 700). The older thresholds keep their defaults.
GEN0_THRESHOLD = 10_000


def tune_collector() -> int:
    """Collect once, freeze every object tracked so far and raise the youngest
    generation's threshold (see the module docstring). Call it once start-up is done.
    Returns how many objects are frozen."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
    frozen = gc.get_freeze_count()
    log.info("garbage collector: %d start-up objects frozen, thresholds %s", frozen, gc.get_threshold())
    return frozen
