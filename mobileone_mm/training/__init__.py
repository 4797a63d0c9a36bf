"""Training helpers: the hook that shows a training recipe at work in the log."""

from .hooks import RecipeLoggerHook

__all__ = ['RecipeLoggerHook']
