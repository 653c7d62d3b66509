"""Errors that the library raises for problems the user can fix."""


class UserError(Exception):
  """An error the user can fix; its message names the problem and the fix."""
