// placeholder: being written (audit trail helpers)
