"""Looking inside a model: what its units track (neurons), how far back its gradients
reach (gradients), whether its text is new (novelty), and the page that shows them.

Library code, like the rest of charrnn: no typer, no rich, no printing; the CLI layer
(charrnn/cli/inspect.py) renders the results.
"""
