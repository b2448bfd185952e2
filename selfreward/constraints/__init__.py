"""Instructions with constraints a program can check (IFEval's 25 instruction types): the checkers, the
public input format, and our own generator of constraint prompts.

May import only top-level modules (records, artifacts, stats, errors); the loop, evaluation and reporting
import it.
"""
