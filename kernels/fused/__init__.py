"""Fused Triton implementations of the ops of kernels/reference.py (docs/objectives.md section 5).

Each module holds the Triton kernels of one op and plain launch functions (`*_fwd`, `*_bwd`) that
take contiguous tensors already checked by the caller. Autograd and the torch.library registration
that makes them traceable by torch.compile live in kernels/ops.py. Importing this package requires
Triton; on CPU tensors the kernels run only under TRITON_INTERPRET=1 (set before import).
"""
