"""A sweep: a full grid over any run-config fields (`[sweep.factors]`, "section.key" -> levels), named arms
outside the grid, over seeds. Every run is trained, evaluated and scored by the same functions as
`cratelab train`, `eval` and `interpret`; a finished run leaves `result.json`, so an interrupted sweep
resumes by skipping finished runs while partial runs resume from their own checkpoints.

The package by job:

    design.py    what the sweep is: its conditions (grid cells and arms), their run names and configs, the
                 planned runs, checked before anything runs (what report/ imports)
    results.py   what a sweep folder holds: result rows and files, sweep.toml and the resume guard
    run.py       one run of the sweep: train, evaluate and score it and its tracked points
    sae_arm.py   one run of an SAE arm: SAEs on a finished base run, evaluated and scored
    execute.py   `cratelab ablate`: the checks on this machine, the local worker pool, the job launchers
    launch.py    the runs as submitit jobs (Slurm, or submitit-local)

The output folder is laid out as layout.py names it: `sweep.toml` (the sweep as run), `runs/<name>/`
(a train run folder, with `eval.json`, `interp/` and `result.json`), `results.csv`, `results_layers.csv`,
`results_track.csv` and the report.

Tracked points (`sweep.track`, fractions of train.max_steps): training keeps the model at each
(`runs/<name>/track/step{N}/`), and the run evaluates and scores each with the same functions and settings
as the final model, so the report can say whether its answers hold along training.
"""
