"""How the Numba CPU kernels are compiled: the fastmath flag set every kernel uses.

None that lets LLVM change a value. With 'contract' and 'reassoc' LLVM may fuse a*b + c into an FMA
and reorder sums as it likes, and it does not always like the same: a parallel kernel compiled in
this process and the same kernel loaded from Numba's cache were measured to round BatchNorm's input
gradient differently (the order of two FMAs), so a run's bits depended on whether the cache was
warm. Without them every compile computes exactly what the source says, in its order; the kernels
sum in explicit blocks (four rows a pass, per-chunk partials) and vectorise over channels, which
needs no reassociation (a training step measured level with the old flags).
No 'nnan'/'ninf' either: np.isnan must keep working.
"""

FASTMATH = set()  # an empty set, not False: the keyword stays where a flag may be wanted again
