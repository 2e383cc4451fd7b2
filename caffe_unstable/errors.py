"""The one exception type users see: CaffeUnstableError(where, what).

`where` is a file (optionally with ':<line>') or "layer '<name>'"; the CLI boundary prints
`error: <where>: <what>` and exits 1.
"""


class CaffeUnstableError(Exception):
    def __init__(self, where, what):
        self.where = str(where) if where is not None else ""
        self.what = str(what)
        super().__init__(self.line())

    def line(self):
        return f"{self.where}: {self.what}" if self.where else self.what


def layer_where(name):
    return f"layer '{name}'"
