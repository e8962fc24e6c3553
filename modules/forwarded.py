"""`Forwarded`: a construct's read-only attribute that is an attribute of one of its resources
(`arn = Forwarded("queue", "arn")` reads `self.queue.arn`), declared in one line instead of a property each.

Like the property it replaces, it reads the resource on every access, and each read of a cdktf attribute is a token
of its own: modules/iam.py merges a role's statements by their resource strings, so a construct whose grants read
`arn` this way keeps the statements (and the synthesized policies) a property gives.
"""

from __future__ import annotations

from typing import overload


class Forwarded:
    def __init__(self, resource: str, attribute: str) -> None:
        self.resource, self.attribute = resource, attribute

    @overload
    def __get__(self, construct: None, owner: type) -> Forwarded: ...

    @overload
    def __get__(self, construct: object, owner: type | None = None) -> str: ...

    def __get__(self, construct: object | None, owner: type | None = None) -> Forwarded | str:
        if construct is None:
            return self  # read on the class: the declaration itself
        value: str = getattr(getattr(construct, self.resource), self.attribute)
        return value
