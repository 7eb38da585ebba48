// placeholder: being written (Redis pub/sub subscriber)
