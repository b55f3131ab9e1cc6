"""Offline side of the recommender: data loading, id maps, networks, training, evaluation, checkpoints.

Data flows one way: raw ratings -> id maps + interactions -> model -> checkpoint. Nothing in this
package imports ``service``.
"""

import os

# OpenMP threads that finish their share of a parallel region spin while they wait for the next one. On a
# host where another process wants the same cores, the spinning threads take its time slices and every
# small op waits for a descheduled thread: an epoch went from under a second to 9-46 s here. Passive
# waiting sleeps instead. It must be set before torch loads its OpenMP runtime, which is why it lives at
# the top of the package every training entry point imports; an explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
