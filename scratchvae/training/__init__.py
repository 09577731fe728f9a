"""The training job (`python -m scratchvae.train`) as a few short modules, one idea each:

settings (the typed record of a run), outdir (the run folder), start (rank 0 decides the run),
resume (the checkpoint as training state), datasets (the images), draws (every random draw),
loop (the recipe: build, steps, end of epoch, stop), evaluation (held-out terms, pictures,
metrics) and cli (flags and exit codes).
"""
