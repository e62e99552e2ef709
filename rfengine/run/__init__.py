"""The pieces a training run is made of, each with one job, composed by `rfengine.trainer.Trainer`:
`build` (model, EMA and their wrappers, objective, optimizer), `lifecycle` (the run folder, its config
and the stop signals), `metrics` (metrics.jsonl, TensorBoard, throughput, MFU, the progress bar),
`checkpoints` (resume, background and sharded saves, the write-failure agreement, export) and `grids`
(the sample grids written along the way)."""
