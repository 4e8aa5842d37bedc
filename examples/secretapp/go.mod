module example.com/secretapp

go 1.22
