"""Benchmarks: ``python -m bench NAME [--quick] [--device cpu|cuda]`` runs ``bench/NAME.py``'s
``main(argv)``. Convention (../shared/BENCHMARKS.md): the project's way and a baseline in the
same run on the same inputs, warm-up then the median of repeats, a readable table, and one JSON
object as the very last line. Add a benchmark by dropping a module with ``main(argv)`` here."""
