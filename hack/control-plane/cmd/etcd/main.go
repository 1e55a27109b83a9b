// etcd built from go.etcd.io/etcd/server/v3 (the version k8s.io/kubernetes requires, which
// is the etcd release envtest pairs with the same Kubernetes minor).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
