"""The integer core: the graph type, the integer arithmetic and its int64 reference executor, the
float executor, the verifiers, the plan (model.json) and the shared config, errors and progress."""
