"""Events for continuous training: CloudEvents 1.0 on changes of state (a verdict, drift,
production's quality, stale labels, a candidate's circuit), produced to ``<prefix>.events``
with Kafka and POSTed to signed webhooks in every mode (docs/events.md).

- ``cloudevents``: the event types and the document's constructor (pure);
- ``detect``: successive read-side snapshots in, the events of their changes out (pure);
- ``signing``, ``template``: Standard Webhooks signatures and body templates (pure);
- ``delivery``: one destination's bounded queue, retries and counts;
- ``webhook``, ``kafka``: the destinations;
- ``bus``: fan-out to destinations and subscribers, and the loop at the edge;
- ``source``: the snapshot of a process's read side.
"""
