"""The jobs the ``magjax`` command runs, one module each, each taking the recipe (or, for
the file tools, its flags). Every job says what it did with its input: records loaded
and skipped (with the first reasons), bindings it does not read refused with a reason,
and an expected failure as one line naming the thing at fault (``JobError``)."""
