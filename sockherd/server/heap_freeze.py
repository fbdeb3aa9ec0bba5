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
* parent, just after fork(): gc.unfreeze() (it goes on collecting its own garbage, so
  nothing it allocates later leaks; its own collections only make its copy of a page
  private, the children keep sharing theirs), and collection back on if it was.

A program that froze its heap itself (more frozen than the interpreter froze at
startup: CPython 3.12 freezes a few hundred objects, 3.11 and 3.13 none) manages its
own freeze: sockherd then neither freezes again nor unfreezes.

The supervisor does not keep gc disabled for its whole life as the recipe's first
step says: it is a long-lived process that may be a program's own, and the
objects it creates after the first fork are its own, not the workers' working set.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

# What the interpreter itself froze at startup (CPython 3.12 freezes a few hundred objects;
# 3.11 and 3.13 none): above it, a program froze its heap itself, and that freeze stays.
_STARTUP_FREEZE_COUNT = gc.get_freeze_count()


@dataclass(frozen=True)
class FrozenForFork:
    """What `before_fork()` changed, so the parent and the child can each undo their part."""

    collecting: bool  # gc was enabled before


def before_fork(enabled: bool) -> FrozenForFork | None:
    """In the parent, right before fork(): freeze the heap.  None (nothing done) when
    `enabled` is off, or when the program froze its heap itself: its freeze is its own to
    manage, and freezing again would keep everything the parent made since frozen."""
    if not enabled or gc.get_freeze_count() > _STARTUP_FREEZE_COUNT:
        return None
    collecting = gc.isenabled()
    gc.disable()
    gc.freeze()
    return FrozenForFork(collecting)


def after_fork_in_parent(frozen: FrozenForFork | None) -> None:
    """In the parent after fork() (or after it failed): unfreeze, collect as before."""
    if frozen is None:
        return
    gc.unfreeze()
    if frozen.collecting:
        gc.enable()


def after_fork_in_child(frozen: FrozenForFork | None) -> None:
    """In the child, first thing: collect again, leaving everything inherited frozen."""
    if frozen is not None:
        gc.enable()
