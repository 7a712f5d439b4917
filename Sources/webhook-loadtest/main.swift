print("webhook-loadtest")
