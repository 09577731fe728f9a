"""How the Numba CPU kernels are compiled: the fastmath flag set every kernel uses.

No 'nnan'/'ninf' (np.isnan must keep working); 'reassoc' lets the reductions vectorise.
"""

FASTMATH = {"reassoc", "contract", "arcp", "nsz"}
