"""`python -m rfengine.study`: the current equal-compute study (v3, `rfengine.study.v3`); v2's protocol,
which made results/digits_v2, runs as `python -m rfengine.study.v2`."""
from rfengine.study.v3 import main

if __name__ == "__main__":
    raise SystemExit(main())
