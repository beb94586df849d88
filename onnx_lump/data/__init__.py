"""The data stages: split calibration inputs into fitting and held-out rows
(``holdout``), compute chain inputs with onnxruntime (``calibration``), run the original
chain on them (``reference``), refit layers in closed form onto it (``compensation``),
refine reduced chains by L-BFGS (``refine``), and keep what one search computes once
(``cache``)."""
