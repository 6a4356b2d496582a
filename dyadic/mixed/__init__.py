"""Mixed precision: Hessian sensitivities (`autodiff`, `hessian`), layer costs (`latency` measured,
`costmodel` stated), the bit-width ILP (`ilp`) and the accuracy/cost sweep (`sweep`)."""
