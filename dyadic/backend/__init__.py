"""Backend: integer graph -> Relax (`lower`, `lower_int4`, the target kernels in `kernels`), the
no-float check and the target-independent build facts (`build`)."""
