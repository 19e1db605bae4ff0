"""The DICOM listener service: receive series, segment them on a durable queue, send SEGs back.

Modules follow the data flow: ``listener`` (pynetdicom) -> ``spool`` (durable files) ->
``completion`` (series idle tracking) -> ``routing`` -> ``jobs`` (durable records) ->
``queue`` (huey carries job ids) -> ``worker`` (pipeline) -> ``sender`` (outbox, C-STORE).
"""
