"""``traintel sync``: run records sent to a collector after the fact (docs/offline.md).

A run that trained offline, or through a collector outage, has a complete record; a sync
replays it into the collector over OTLP as the live export would have sent it: metric points
at their original times (the live export code over a state rebuilt from the record), logs with
their times and trace ids, spans with their ids. The parts: the records and a first pass over
them (``source``), the replayed state (``replay``), when metric points go (``timeline``), the
OTLP items (``payload``), the batches of one record (``plan``), the cursor beside each record
(``cursor``), the collector (``target``), and the whole run of it (``deliver``).

Nothing is imported here, so that ``traintel`` commands pay only for what they use.
"""
