"""Studies on the embedded digits: `python -m rfengine.study` runs the current equal-compute study (v3).
The retired studies (v1, v2) are named in docs/study.md by the commit and command that made their results."""
