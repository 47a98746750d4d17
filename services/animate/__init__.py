"""Animate family: LivePortrait portrait animation (driving video, expression editing, talking head)."""
