"""Keep the parent's heap shared with its forked children: `gc.freeze()` around fork().

Theory of operation
-------------------
After fork() a child shares every page of its parent's heap until one side writes
to it.  CPython writes to nearly every object it looks at: reference counts, and the
cyclic garbage collector's header of every tracked object each time a collection
traverses it.  A child's first full collection therefore touches every container
object it inherited, and the pages holding them turn private: a worker's PSS grows
to the size of the supervisor's heap within seconds.  CPython's documented recipe
(`gc.freeze`): "call gc.disable() early in the parent process, gc.freeze() right
before fork(), and gc.enable() early in child processes".  Frozen objects move to a
permanent generation no collection traverses.

What sockherd does around each fork of a worker (`spawner`) or a request child
(`ForkingMixIn`), when the server's `freeze_heap` is on (the default):

* parent, just before fork(): gc.disable() (no collection between the freeze and
  the fork), gc.freeze();
* child, first thing: gc.enable().  Everything it inherited stays frozen for its
  whole life: its collections traverse only what it allocates itself, and the
  inherited pages stay shared (only reference counts still write to them);
* parent, just after fork(): gc.unfreeze() if nothing was frozen before (it goes on
  collecting its own garbage, so nothing it allocates later leaks; its own
  collections only make its copy of a page private, the children keep sharing
  theirs), and collection back on if it was.  A program that froze its heap
  itself keeps it frozen: sockherd does not undo a freeze it did not make.

The supervisor does not keep gc disabled for its whole life as the recipe's first
step says: it is a long-lived process that may be a program's own, and the
objects it creates after the first fork are its own, not the workers' working set.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass


@dataclass(frozen=True)
class FrozenForFork:
    """What `before_fork()` changed, so the parent and the child can each undo their part."""

    collecting: bool  # gc was enabled before
    unfreeze: bool  # nothing was frozen before: the parent unfreezes after the fork


def before_fork(enabled: bool) -> FrozenForFork | None:
    """In the parent, right before fork(): freeze the heap (None: `enabled` is off)."""
    if not enabled:
        return None
    collecting = gc.isenabled()
    gc.disable()
    unfreeze = gc.get_freeze_count() == 0
    gc.freeze()
    return FrozenForFork(collecting, unfreeze)


def after_fork_in_parent(frozen: FrozenForFork | None) -> None:
    """In the parent after fork() (or after it failed): give the collector its state back."""
    if frozen is None:
        return
    if frozen.unfreeze:
        gc.unfreeze()
    if frozen.collecting:
        gc.enable()


def after_fork_in_child(frozen: FrozenForFork | None) -> None:
    """In the child, first thing: collect again, leaving everything inherited frozen."""
    if frozen is not None:
        gc.enable()
