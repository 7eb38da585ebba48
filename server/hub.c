// placeholder: being written (vehicle channel hub)
