"""Token amounts in wei: exact integers of up to 78 digits on every database. SQLite has no
exact numeric type (a large DecimalField is stored as a float and loses wei), so the value is
kept as a decimal string and handed to Python as an int."""

from django.core.exceptions import ValidationError
from django.db import models


class WeiField(models.CharField):
    description = "Non-negative integer amount in wei"

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("max_length", 78)
        super().__init__(*args, **kwargs)

    def deconstruct(self):
        name, path, args, kwargs = super().deconstruct()
        kwargs.pop("max_length", None)
        return name, path, args, kwargs

    def from_db_value(self, value, expression, connection):
        return None if value is None else int(value)

    def to_python(self, value):
        if value is None or isinstance(value, int):
            return value
        try:
            return int(str(value))
        except ValueError:
            raise ValidationError(f"{value!r} is not an integer amount of wei") from None

    def get_prep_value(self, value):
        value = self.to_python(value)
        if value is not None and value < 0:
            raise ValueError("wei amounts are never negative")
        return None if value is None else str(value)
