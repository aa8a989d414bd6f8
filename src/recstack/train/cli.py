"""`recstack train` and `recstack demo` (placeholders until the trainer lands)."""


def train() -> None:
    raise NotImplementedError


def demo() -> None:
    raise NotImplementedError
