"""Errors the user caused (bad names, budgets, files). The CLI prints one line and exits 2."""


class UserError(Exception):
    pass


class RunFailed(Exception):
    """A run stopped on its own terms (NaN/inf in a loss); its files are kept and marked failed."""
