"""Work on stored data beyond ingesting it: retention, dead letters, summary rebuilds.

* :mod:`.rebuild` -- the window summaries of a span recomputed from the raw rows;
* :mod:`.prune` -- deleting old sessions or a whole sensor, keeping every summary exact;
* :mod:`.dead_letters` -- listing, retrying and purging the lines ingest could not use;
* :mod:`.commands` -- the ``prune`` and ``dead-letters`` subcommands.
"""
