"""charrnn: a character-level RNN / LSTM / GRU text generator."""

__version__ = "0.1.0"
