// etcd, as go.etcd.io/etcd/server/v3's own main package starts it; a package of this module so
// that `go build -o DIR/ ./etcd` names the binary etcd (the module's would be named "server").
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
