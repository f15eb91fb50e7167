"""What the experiments of both papers use: the session (model, engine, dataset, vocabulary), the
Neo cell table, attention over a description, layer windows."""
