"""The one wall-clock limit the tests use: a guard against a hang, never a measure of speed.

A test waits at most HANG_S seconds for anything (a child process, a line of its output, a file).
The longest such wait takes about two minutes on an idle 2-core machine, so a machine busy with
other CPU-bound jobs stays far inside the limit, while a real hang still ends the test instead of
the whole CI run. The CUDA-simulator child suite has no limit at all (it is the suite itself).
"""

HANG_S = 1800
