module ambit.test/h2peer

go 1.24
