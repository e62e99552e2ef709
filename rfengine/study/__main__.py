"""`python -m rfengine.study`: the current equal-compute study (v3, `rfengine.study.v3`)."""
from rfengine.study.v3 import main

if __name__ == "__main__":
    raise SystemExit(main())
