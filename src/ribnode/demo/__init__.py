"""ribnode.demo: ``ribnode demo`` (``run``) and the local Orthanc it and the tests use as a PACS
(``orthanc``). Neither is on the product's data path."""
