"""End-to-end and fault tests that spawn ribnode processes, Orthanc or a browser (marker ``e2e``)."""
