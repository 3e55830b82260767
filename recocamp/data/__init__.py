"""Data in: purchase, customer and item files read, validated and imported all-or-nothing.

Owns: the file formats (:mod:`.sources`), the import with its limits and tombstone checks
(:mod:`.ingest`), the catalogue rules — service codes, categories — (:mod:`.catalog`), the
worker's drop folder (:mod:`.drop_folder`), scrubbing erased customers out of the files we
keep (:mod:`.erasure_files`), profile and consent changes (:mod:`.profiles`), and the demo
shop: the UCI purchases or the deterministic synthetic shop (:mod:`.demo`, :mod:`.synthetic`).

May import: the base modules and ``store``.
Exports (by module): ``ingest.Importer``, ``ingest.ImportReport``,
``drop_folder.import_drop_folder``, ``demo.build_demo``, ``synthetic.generate_shop``,
``catalog.build_catalog``.
"""
