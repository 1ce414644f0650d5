"""csvembed: every CSV row becomes a vector embedding, through RQ jobs, into a sqlite-vec store."""

__version__ = "0.1.0"
