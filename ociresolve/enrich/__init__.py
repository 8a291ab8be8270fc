"""``ociresolve enrich``: another tool's event lines, with the pod and container of each event's
pid or cgroup id added (``formats``: where the keys are and how fields are added; ``lookup``:
who a key belongs to; ``stream``: the filter from one file descriptor to another)."""
