"""ribnode.dicom_sr"""
