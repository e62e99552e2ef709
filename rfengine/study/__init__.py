"""Studies on the embedded digits: `python -m rfengine.study` (the equal-compute study v3);
`python -m rfengine.study.v2` (v2, which made results/digits_v2). v1's docs name the commit that made them."""
