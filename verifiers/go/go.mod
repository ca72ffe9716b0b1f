module github.com/keyrelay/verify

go 1.19
